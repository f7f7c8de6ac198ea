"""Operations around the analysis core: environment config, stats index, results cache, health, self-test.

    from forensics.ops.env import config_from_env
    config = config_from_env(None, os.environ)        # only the CLI / Serve edge passes os.environ

Modules: ``env`` (env overrides), ``migrate`` (config file versions), ``stats`` (SQLite index of
results), ``cache`` (results cache), ``health`` (``info``), ``selftest`` (``test``), ``metrics``,
``auth``. Nothing is imported here, so ``import forensics.ops`` stays cheap.
"""

__all__: list[str] = []

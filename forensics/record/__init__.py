"""Recorder SDK: capture an incident around the user's own generate / forward call.

with record(model, tokenizer) as rec:
    model.generate(**inputs, max_new_tokens=8, do_sample=False)
rec.save("bundles/incident", failure=FailureSpec.expected(" Canberra", tokenizer))
"""

from forensics.record.greedy import GreedyRun, record_greedy
from forensics.record.recorder import CallLog, Recorder, record

__all__ = ["CallLog", "GreedyRun", "Recorder", "record", "record_greedy"]

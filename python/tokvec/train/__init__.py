"""tokvec's model-making pipeline: distill a sentence encoder into a static table, tune it on real sentences
against the encoder, and evaluate any model on the same tasks.

    >>> from tokvec.train import distill, tune, evaluate
    >>> distill("all-MiniLM-L6-v2/", "distilled", dim=256, corpus="sentences.tsv")
    >>> tune("distilled", "all-MiniLM-L6-v2/", "sentences.tsv", "tuned")
    >>> evaluate("tuned", split="dev")
"""

from tokvec.train.distill import distill
from tokvec.train.evaluate import evaluate
from tokvec.train.teacher import Teacher, TeacherError
from tokvec.train.tune import TuneConfig, tune

__all__ = ["Teacher", "TeacherError", "TuneConfig", "distill", "evaluate", "tune"]

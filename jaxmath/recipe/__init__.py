"""The pieces of the full recipe that the pipeline runs between and after its stages: held-out evaluation of each
stage's model (heldout.py), self-evolution rounds (evolve.py), the format hand-off checks between stages
(handoffs.py) and the final report (report.py)."""

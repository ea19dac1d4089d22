"""Process reward models in use: step-labelled data, scoring, best-of-N, quality filtering, an RL step bonus.

    synthetic.py  seeded arithmetic chains whose wrong steps carry on (training and test data)
    steps.py      split a solution into the steps a PRM scores
    labels.py     step labels from verified solutions (first failing equation on, else the last step)
    rollout.py    step labels from Monte-Carlo rollouts of a policy (Math-Shepherd)
    scorer.py     PRMScorer: per-step P(good) in padded batches, aggregated by min / product / last
    filter.py     keep correct solutions whose PRM score exceeds a threshold (`jaxmath data prm-filter`)
    reward.py     prm_step_bonus: a GRPO reward function built from a scorer

Best-of-N selection in evaluation is `jaxmath eval ... --select prm --prm PATH` (jaxmath.evaluation).
"""

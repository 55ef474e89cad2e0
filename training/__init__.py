"""Making models: the synthetic corpus, the clip dataset, the training loop and job, evaluation.

- `training.synthetic`: ten motion classes in five exactly time-reversed pairs;
- `training.clip_dataset`: TSN-sampled clips of a labelled manifest (torch Dataset);
- `training.loop`: the optimisation loop (`fit`), no logging of its own;
- `training.train_job`: a training run recorded in MLflow, the best model registered;
- `training.evaluation`: top-1/top-5/per-class accuracy of a version, via the label job.
"""

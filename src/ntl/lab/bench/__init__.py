"""``ntl bench`` and the prepared GPU check: time and peak memory of CE vs CE+NTL.

One module per job:

- `cli`: the ``ntl bench`` options and driver (``bench.json``, ``bench.md``);
- `gpu_check`: the prepared check for a CUDA machine (``make gpu-check``);
- `loss_cases`, `linear_memory`, `train_step`, `logits_free_step`: the benchmarks, each run
  by a worker process (``python -m ntl.lab.bench KIND``, started by `worker.spawn`);
- `external`: Liger-Kernel's and Cut Cross-Entropy's CE cases (optional packages);
- `measure`: interleaved timers, per-round ratios, peak memory;
- `inputs`: vocabularies, labels and the reference losses; `shapes`: shapes and dtypes;
- `tables`: the markdown.
"""

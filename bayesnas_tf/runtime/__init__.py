"""Where and how a run executes, the same for every mode.

What lives here: tf.distribute strategies and their helpers (distribute.py),
clusters of workers and TPUs (cluster.py), TensorFlow's thread pools
(threads.py), dtype policies and loss scaling (precision.py), SIGTERM
handling (preemption.py), checked checkpoint saves and restores
(checkpointing.py), the run directory's files and checks (run_dir.py), its
lock (run_lock.py), TensorBoard event files (event_writer.py), progress bars
and log lines (progress.py) and result.json (results.py).

What it may import: `bayesnas_tf.errors`, `bayesnas_tf.io_utils`,
`bayesnas_tf.nn` and `bayesnas_tf.config`; never the data, the search
spaces, the algorithm or the modes.
"""

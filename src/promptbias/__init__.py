"""promptbias — train, evaluate and explain multi-modal prompts and bias tuning on CLIP.

The library lives in sub-packages that data flows through in one direction:
``data`` → ``model``/``methods`` → ``train``/``evaluate`` → ``probes`` → ``render``.
The ``promptbias`` console script (``cli.py``) exposes one subcommand per pipeline stage.
"""

__version__ = "0.1.0"

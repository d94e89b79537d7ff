"""The demo world: the offline, embedded default that runs the whole DAG on a CPU.

* :mod:`~promptbias.demo.world` — procedurally drawn image datasets (written to ``data/raw`` in a real
  dataset's layout by ``promptbias fetch demo_*``) and the image–caption corpus of the same world;
* :mod:`~promptbias.demo.pretrain` — ``promptbias pretrain-demo``: contrastive pretraining of the tiny
  demo CLIP on that corpus.
"""

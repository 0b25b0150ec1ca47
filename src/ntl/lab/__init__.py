"""The lab: everything that tests the loss rather than being it.

Data (``data``), arms (``arms``: token arms and the paper's baselines as model classes),
training (``train``), evaluation (``evaluate``, ``metrics``), reports (``report``, ``paired``,
``aggregate``), the main job (``experiment``, ``config``, ``progress``) and benchmarks
(``bench``). It may use transformers, mathematics_dataset, matplotlib, rich...; the library
(``ntl.numbers``, ``ntl.losses``, ``ntl.integrations``) never imports it.
"""

"""Per-example gradient machinery shared by :mod:`fdl.per_sample` and :mod:`fdl.privacy`.

* :mod:`fdl._per_sample.rules`: recording linear/conv calls and the
  per-example rules on their (input, output-gradient) factors.
* :mod:`fdl._per_sample.core`: the representations (dense, factored, chunked)
  and the ``rules``/``vmap`` paths that build them.
"""

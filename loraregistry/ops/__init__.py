"""Adapter operations: convert, merge, resize (and bake / extract, in their own modules).

numpy + ml_dtypes only, accumulating in fp64; torch is never imported here. Shared machinery others build on:

* ``ops.io``: ``load_canonical`` (tensors in canonical form with a uniform per-module ``alpha``),
  ``write_op_output`` (temp file -> verify -> atomic rename; refuses a failing output unless forced, and an
  output path that is an input), ``op_metadata`` / ``parent_record`` (provenance);
* ``ops.delta``: the dense delta of one module for every algorithm (``module_delta``), its scale, and exact
  plain-LoRA factors (``lowrank_factors``);
* ``ops.lowrank``: factor-space SVD (QR of the factors + SVD of the small core) and kohya's rank rules;
* ``ops.targets``: base weight shapes, and SD3/Flux fused projections split / fused;
* ``ops.errors``: the errors these raise; ``ops.progress``: a progress bar on stderr when it is a tty.

Importing ``loraregistry.ops`` loads nothing heavy; import the submodule you need.
"""

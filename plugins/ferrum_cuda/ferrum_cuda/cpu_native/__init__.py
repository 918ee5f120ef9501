"""The native CPU kernels of the `torch` backend: fused fp32 decode kernels in C.

``csrc/``: the C sources (package data; ``gen_*`` written by :mod:`.generate`);
:mod:`.source` reads and hashes them; :mod:`.isa` picks the register tiles for
this CPU; :mod:`.build` compiles them once into ``$FERRUM_HOME/kernels``
(verified by :mod:`.cache` before loading); :mod:`.kernels` wraps them for
torch; :mod:`.settings` turns the executor options into what is used, and why.
Importing this package (and every module but :mod:`.kernels`) imports no torch.
"""

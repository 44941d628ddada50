"""python -m kalman_norm.ops: build the fused prior's library now (or find it in the cache) and
print where it is, e.g. on a cluster's shared file system before the workers start."""
from . import build

print(build())

"""A Ray worker node for the multi-node tests: joins the GCS at argv[1] with argv[2] CPUs on
127.0.0.1 and runs until it is killed.

``ray start`` maps 127.0.0.1 to the machine's outward address, and the setting that keeps Ray on
the loopback refuses a second node in its command line; Ray's own test utility
(``ray.cluster_utils.Cluster``) starts nodes the same way, through ``Node``, but inside the
test process, where a node cannot have a mount namespace of its own. This script is started
under ``unshare --mount`` by tests/integration/test_multinode.py."""
import signal
import sys

from ray._private.node import Node
from ray._private.parameter import RayParams

if __name__ == "__main__":
    gcs, cpus, temp_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    params = RayParams(node_ip_address="127.0.0.1", gcs_address=gcs, num_cpus=cpus, num_gpus=0,
                       include_dashboard=False, min_worker_port=0, max_worker_port=0,
                       temp_dir=temp_dir)
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print("joined", flush=True)
    signal.pause()

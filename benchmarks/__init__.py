"""Benchmarks behind `dgan bench ...`: each prints a rich table and writes JSON."""

# The throughput benches keep their nodes at one D step per feedback, the pace their stored figures were measured at
# (the nodes' default became 2 in session 32): a change at the nodes must not read as a change in the transport or
# the generator. Passed to every node (RunConfig.node_args) or set in their ExperimentConfig.
ONE_D_STEP = ["--d-steps", "1"]

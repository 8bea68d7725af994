"""fdl benchmarks: each module measures one workload against its peers, side by side."""

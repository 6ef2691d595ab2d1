"""The kubelet's DRA plugin API (`DRAPlugin`); imported by the DRA driver process only."""

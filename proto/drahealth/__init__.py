"""The kubelet's DRA device-health API (`DRAResourceHealth`); imported by the DRA driver only."""

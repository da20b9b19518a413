"""Pure functions for the cluster: manifests, Kubernetes reasons, and results read back from Jobs."""

"""The Kubernetes operator: BacktestStrategy resources in, sandbox Jobs out, results to the store."""

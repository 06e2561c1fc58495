"""Many runs: studies, sweeps and their reports."""

"""Pure planning: desired state + observed state -> the steps that converge them."""

"""Tasks with ground truth: IOI."""

"""Local validation before go-live: labels, figures with intervals, the verdict, recalibration."""

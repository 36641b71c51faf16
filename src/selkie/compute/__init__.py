"""Compute drivers: where and how `mariadbd` computes run."""

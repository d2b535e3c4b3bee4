"""Datasets and the conversion of user data into calibration / evaluation batches."""

from lowbit.data.calibration import calibration_batches, labelled_batches

__all__ = ["calibration_batches", "labelled_batches"]

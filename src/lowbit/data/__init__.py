"""Datasets and the conversion of user data into calibration / evaluation batches."""

from lowbit.data.calibration import calibration_batches, labelled_batches
from lowbit.data.info import DatasetInfo
from lowbit.data.registry import DATASET_NAMES, load_dataset

__all__ = ["calibration_batches", "labelled_batches", "DatasetInfo", "DATASET_NAMES", "load_dataset"]

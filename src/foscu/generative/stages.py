"""Moved to foscu.stages (the stage table now holds segmentation too); this name goes once callers move."""

from foscu.stages import STAGES, load_stage, train_stage

__all__ = ["STAGES", "load_stage", "train_stage"]

"""Chromify: old black-and-white photographs back to colour. The library the CLI, the DVC stages and the KFP
components all call; it imports neither kfp nor dvc."""

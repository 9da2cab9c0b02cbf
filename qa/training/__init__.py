"""Offline tools: training, calibration fitting and packing of spanqa's models.

Nothing on the answering path (``qa.pipeline`` and what it imports) imports this package;
these modules read the question sets in ``../shared/data`` and write model folders.
"""

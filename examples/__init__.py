"""Labelled examples for edgepack."""

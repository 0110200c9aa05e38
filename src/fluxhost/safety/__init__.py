"""Moderation of prompts and images, as strict as a task's ``safetyTolerance`` asks (0 strictest,
6 off): term lists per category (shipped as editable data files, always on), and optional
classifiers through transformers (a text classifier for prompts, an image classifier or NudeNet
for images). Each check answers with the category it found, or None.
"""

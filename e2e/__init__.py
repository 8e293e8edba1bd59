"""End-to-end check of Anima against a real SillyTavern 1.19.0 driven in headless Chromium.

Run with `make e2e` (or `python -m e2e`); kept out of `make test`. See docs/e2e-sillytavern.md.
"""

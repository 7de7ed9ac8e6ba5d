"""Tests of the browser edge."""

"""Tests of peft."""

"""Tests of dirigent_langfuse/mapping/."""

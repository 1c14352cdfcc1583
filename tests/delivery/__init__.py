"""Tests of dirigent_langfuse/delivery/."""

"""Tests of dirigent_langfuse/receiver/."""

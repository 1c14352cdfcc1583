"""Tests of dirigent_langfuse/wire/."""

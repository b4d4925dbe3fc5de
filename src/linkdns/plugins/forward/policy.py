"""Upstream selection policies (CoreDNS plugin/forward/policy.go): the order to try them in."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Policy:
    name = ""

    def order(self, pool: Sequence[T]) -> list[T]:
        raise NotImplementedError


class Random(Policy):
    name = "random"

    def order(self, pool: Sequence[T]) -> list[T]:
        out = list(pool)
        if len(out) > 1:
            random.shuffle(out)
        return out


class RoundRobin(Policy):
    """Each query starts one further along the list."""

    name = "round_robin"

    def __init__(self) -> None:
        self.robin = 0

    def order(self, pool: Sequence[T]) -> list[T]:
        self.robin += 1
        i = self.robin % len(pool) if pool else 0
        return [*pool[i:], *pool[:i]]


class Sequential(Policy):
    """Always in the order written."""

    name = "sequential"

    def order(self, pool: Sequence[T]) -> list[T]:
        return list(pool)


def make(name: str) -> Policy:
    return {"random": Random, "round_robin": RoundRobin, "sequential": Sequential}[name]()

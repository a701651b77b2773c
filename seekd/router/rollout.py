"""Which target of a route serves a request: weighted A/B and canary shares, sticky per user or
tenant, and blue-green switches — all changeable while the router runs.

Stickiness hashes (route, user or tenant) to a point in [0, 1) that is laid over the cumulative
target weights, so a user stays on one target while the weights stand, and moving the canary from
1 % to 10 % only moves users onto the canary (the canary owns the low end of the interval).
A blue-green switch re-points a route's targets from one backend group to another: new requests go
to the new group at once, while requests already in flight on the old group finish there (drain);
`draining()` says how many are left.
"""

from __future__ import annotations

import copy
import dataclasses
import random

from seekd.router.backends import BackendRegistry
from seekd.router.balancer import stable_hash
from seekd.router.config import RouteConfig, RouterConfig, TargetConfig

UNIT = float(2**64)


class Rollout:
    def __init__(self, config: RouterConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.routes: dict[str, RouteConfig] = {r.name: copy.deepcopy(r) for r in config.routes}

    def route(self, model: str) -> RouteConfig | None:
        return self.routes.get(model) or self.config.route(model)

    def reload(self, config: RouterConfig) -> None:
        self.config = config
        self.routes = {r.name: copy.deepcopy(r) for r in config.routes}

    def choose(self, route: RouteConfig, user: str | None, tenant: str | None) -> TargetConfig:
        sticky_id = {"user": user or tenant, "tenant": tenant, "none": None}[route.sticky]
        point = stable_hash(f"{route.name}:{sticky_id}") / UNIT if sticky_id else self.rng.random()
        total = sum(t.weight for t in route.targets)
        # the smallest-weight targets first: a canary keeps its users as its share grows
        ordered = sorted(route.targets, key=lambda t: t.weight)
        edge = 0.0
        for target in ordered:
            edge += target.weight / total
            if point < edge and target.weight > 0:
                return target
        return next(t for t in reversed(ordered) if t.weight > 0)

    def set_targets(self, model: str, targets: list[TargetConfig]) -> RouteConfig:
        route = self.route(model)
        if route is None:
            raise KeyError(model)
        route = copy.deepcopy(route)
        route.targets = targets
        route.__post_init__()
        self.routes[model] = route
        return route

    def switch_group(self, model: str, group: str) -> tuple[RouteConfig, set[str]]:
        """Blue-green: every target of the route goes to `group`; returns the groups it left."""
        route = self.route(model)
        if route is None:
            raise KeyError(model)
        old = {t.group for t in route.targets if t.group and t.group != group}
        targets = [dataclasses.replace(t, group=group) for t in route.targets]
        return self.set_targets(model, targets), old

    def draining(self, registry: BackendRegistry, model: str, groups: set[str]) -> int:
        """Requests still in flight on the backends of `groups` that serve `model`."""
        route = self.route(model)
        models = {t.model for t in route.targets} if route else {model}
        return sum(b.outstanding for b in registry if b.config.group in groups and models & set(b.config.models))

    def state(self) -> dict:
        return {
            name: {
                "targets": [vars(t) for t in route.targets],
                "fallbacks": route.fallbacks,
                "sticky": route.sticky,
            }
            for name, route in self.routes.items()
        }

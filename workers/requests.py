"""Bounds and checks of the kubelet's unary requests (worker process, gRPC threads).

Every check is linear in the request and bounded: sizes are checked first (len() of a repeated
field is O(1)), then at most the advertised number of IDs is looked up in a set, and a long
request checks every CHECK_EVERY IDs that its caller is still waiting, so a cancelled or expired
call stops its work.
"""

from __future__ import annotations

import grpc

from common.config import MAX_RDMA_HCA_MAX
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from workers import plan as planning

#: Container requests one Allocate or GetPreferredAllocation may carry. The kubelet sends exactly
#: one per call; the proto allows more, and each costs a copy of the answer, so a bound keeps a
#: crafted request's response (and its CPU) small.
MAX_CONTAINERS = 64
#: A long request checks every this many IDs whether its caller is still waiting.
CHECK_EVERY = 1024
#: Longest piece of an unknown ID quoted back in an error.
MAX_SHOWN_ID = 64


def call_alive(context: grpc.ServicerContext) -> bool:
    """False once the client cancelled the call or its deadline passed: stop working for it."""
    if not context.is_active():
        return False
    remaining = context.time_remaining()
    return remaining is None or remaining > 0


def id_limit(plan: planning.Plan | None) -> int:
    """How many device IDs one request may name: what the resource advertises (the kubelet only
    hands out advertised IDs, each to one container), or rdmaHcaMax's ceiling before any plan."""
    return MAX_RDMA_HCA_MAX if plan is None else len(plan.device_ids)


def unknown(
    plan: planning.Plan, request: dp.AllocateRequest, context: grpc.ServicerContext
) -> list[str] | None:
    """The request's IDs that were never advertised, in order without repeats; None when the
    caller went away meanwhile (checked every CHECK_EVERY IDs)."""
    unknown: dict[str, None] = {}  # insertion-ordered set
    looked = 0
    for container in request.container_requests:
        for device_id in container.devices_ids:
            if device_id not in plan.id_set:
                unknown[device_id] = None
            looked += 1
            if looked % CHECK_EVERY == 0 and not call_alive(context):
                return None
    return list(unknown)


def allocate_problem(
    plan: planning.Plan | None,
    refusal: str | None,
    request: dp.AllocateRequest,
    context: grpc.ServicerContext,
) -> tuple[grpc.StatusCode, str] | None:
    """Why `request` is refused, or None. Linear in the request and bounded: the sizes are checked
    first (len() of a repeated field is O(1)), then at most the advertised number of IDs is
    looked up in a set, and the call's liveness is checked every CHECK_EVERY IDs."""
    if plan is None:
        return grpc.StatusCode.UNAVAILABLE, "the worker has no device set yet; retry"
    name = plan.resource.full_name
    containers = request.container_requests
    if len(containers) > MAX_CONTAINERS:
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: the request has {len(containers)} container requests, more than the "
            f"{MAX_CONTAINERS} one Allocate may carry (the kubelet sends one per call)",
        )
    total = sum(len(c.devices_ids) for c in containers)
    limit = len(plan.device_ids)
    if total > limit:
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: the request names {total} device IDs, more than the {limit} this "
            f"resource advertises; one request can name at most {limit}",
        )
    unknown_ids = unknown(plan, request, context)
    if unknown_ids is None:
        return grpc.StatusCode.CANCELLED, f"{name}: the call was cancelled or expired"
    if unknown_ids:
        listed = unknown_ids
        shown = ", ".join(repr(i[:MAX_SHOWN_ID]) for i in listed[:10])
        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: device IDs {shown}{more} were never advertised "
            f"(this resource advertises {limit} IDs)",
        )
    wanted = total > 0
    if wanted and refusal is not None:
        return grpc.StatusCode.FAILED_PRECONDITION, refusal
    if wanted and not plan.can_allocate:
        return (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{name}: no usable RDMA device is matched right now "
            "(char devices missing); the devices are advertised Unhealthy",
        )
    return None


def preferred_problem(
    plan: planning.Plan | None, request: dp.PreferredAllocationRequest
) -> str | None:
    """Why a GetPreferredAllocation request is refused, or None: checked on sizes only (O(1)
    per container), so a huge request costs nothing before it is refused."""
    containers = request.container_requests
    if len(containers) > MAX_CONTAINERS:
        return (
            f"the request has {len(containers)} container requests, more than the "
            f"{MAX_CONTAINERS} one call may carry (the kubelet sends one per call)"
        )
    limit = id_limit(plan)
    for index, c in enumerate(containers):
        offered = len(c.available_deviceIDs) + len(c.must_include_deviceIDs)
        if c.allocation_size < 0:
            return f"container request {index}: allocation_size {c.allocation_size} is negative"
        if c.allocation_size > limit or offered > 2 * limit:
            return (
                f"container request {index}: allocation_size {c.allocation_size} with "
                f"{len(c.available_deviceIDs)} available and {len(c.must_include_deviceIDs)} "
                f"must-include IDs; this resource advertises {limit} IDs"
            )
    return None

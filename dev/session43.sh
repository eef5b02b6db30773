#!/usr/bin/env bash
# Session 43's device calls: session 41-42's A/Bs first, their tests only for what wins (the budget left after
# three failed starts fits two calls). nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"].
#   call 1: bash dev/session43.sh ab1      (~7-9 min: split flags kept / adds ordered at 16 and 64 tokens, W4 g128
#           and fp8; tile order and 2 x 2 clusters and fp8-block's overlapped promotion at 1024 and 8192 tokens)
#   call 2: the winners' tests (dev/session41.sh locktests / ordertests) and the protocol table under them
cd "$(dirname "$0")/.."
ab1() {
  LOCK_LABELS="default keep ordered" LOCK_SCHEMES="w4 fp8" PROBE_TIMEOUT=60 \
    ORDER_SCHEMES=fp8-block,fp8,w8a8-int8 ORDER_TOKENS=1024,8192 ORDER_ROUNDS=1 ORDER_TIMEOUT=250 \
    bash dev/session41.sh lockab orderab
}
for stage in "$@"; do "$stage"; done

p0_0 (tracepoint/syscalls/sys_enter_openat):
   0: r6 = r1
   1: r1 = map[0]
   3: r2 = 24
   4: r3 = 0
   5: call 131
   6: if r0 != 0 goto +10
   7: *(u32 *)(r10 -8) = 0
   8: r1 = map[0]
  10: r2 = r10
  11: r2 += -8
  12: call 1
  13: if r0 == 0 goto +2
  14: r1 = 1
  15: lock *(u64 *)(r0 +0) += r1
  16: goto +10
  17: r7 = r0
  18: call 5
  19: *(u64 *)(r7 +0) = r0
  20: *(u32 *)(r7 +8) = 0
  21: *(u32 *)(r7 +12) = 0
  22: r0 = *(u64 *)(r6 +32)
  23: *(u64 *)(r7 +16) = r0
  24: r1 = r7
  25: r2 = 0
  26: call 132
  27: r0 = 0
  28: exit
[
  {
    "size": 24,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "flags",
        "offset": 16,
        "type": "u64"
      }
    ]
  }
]

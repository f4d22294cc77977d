p0_0 (tracepoint/signal/signal_generate):
   0: r6 = r1
   1: r1 = map[0]
   3: r2 = 200
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
  16: goto +26
  17: r7 = r0
  18: call 5
  19: *(u64 *)(r7 +0) = r0
  20: *(u32 *)(r7 +8) = 0
  21: *(u32 *)(r7 +12) = 0
  22: r0 = *(u32 *)(r6 +8)
  23: r0 <<= 32
  24: r0 s>>= 32
  25: *(u64 *)(r7 +16) = r0
  26: r1 = r6
  27: r2 = r7
  28: r2 += 32
  29: r3 = 32
  30: r4 = 0
  31: call 67
  32: *(u64 *)(r7 +24) = r0
  33: r1 = r6
  34: r2 = r7
  35: r2 += 72
  36: r3 = 128
  37: r4 = 0
  38: call 67
  39: *(u64 *)(r7 +64) = r0
  40: r1 = r7
  41: r2 = 0
  42: call 132
  43: r0 = 0
  44: exit
[
  {
    "size": 200,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "sig",
        "offset": 16,
        "type": "signal"
      },
      {
        "name": "stack",
        "offset": 24,
        "type": "stack",
        "depth": 4
      },
      {
        "name": "deep",
        "offset": 64,
        "type": "stack",
        "depth": 16
      }
    ]
  }
]

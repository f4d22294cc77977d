p0_0 (tracepoint/sock/inet_sock_set_state):
   0: r6 = r1
   1: r0 = *(u16 *)(r6 +30)
   2: *(u64 *)(r10 -8) = r0
   3: r0 = 6
   4: r1 = *(u64 *)(r10 -8)
   5: if r1 != r0 goto +92
   6: r0 = *(u16 *)(r6 +28)
   7: *(u64 *)(r10 -8) = r0
   8: r0 = 2
   9: r1 = *(u64 *)(r10 -8)
  10: if r1 != r0 goto +47
  11: r1 = map[0]
  13: r2 = 48
  14: r3 = 0
  15: call 131
  16: if r0 != 0 goto +10
  17: *(u32 *)(r10 -8) = 0
  18: r1 = map[0]
  20: r2 = r10
  21: r2 += -8
  22: call 1
  23: if r0 == 0 goto +2
  24: r1 = 1
  25: lock *(u64 *)(r0 +0) += r1
  26: goto +30
  27: r7 = r0
  28: call 5
  29: *(u64 *)(r7 +0) = r0
  30: *(u32 *)(r7 +8) = 0
  31: *(u32 *)(r7 +12) = 0
  32: r1 = r7
  33: r1 += 16
  34: r2 = 4
  35: r3 = r6
  36: r3 += 32
  37: call 113
  38: r1 = r7
  39: r1 += 24
  40: r2 = 4
  41: r3 = r6
  42: r3 += 36
  43: call 113
  44: r1 = r7
  45: r1 += 32
  46: r2 = 4
  47: r3 = r6
  48: r3 += 32
  49: call 113
  50: r0 = *(u32 *)(r6 +20)
  51: r0 <<= 32
  52: r0 s>>= 32
  53: *(u64 *)(r7 +40) = r0
  54: r1 = r7
  55: r2 = 0
  56: call 132
  57: goto +40
  58: r1 = map[0]
  60: r2 = 56
  61: r3 = 0
  62: call 131
  63: if r0 != 0 goto +10
  64: *(u32 *)(r10 -8) = 0
  65: r1 = map[0]
  67: r2 = r10
  68: r2 += -8
  69: call 1
  70: if r0 == 0 goto +2
  71: r1 = 1
  72: lock *(u64 *)(r0 +0) += r1
  73: goto +24
  74: r7 = r0
  75: call 5
  76: *(u64 *)(r7 +0) = r0
  77: *(u32 *)(r7 +8) = 1
  78: *(u32 *)(r7 +12) = 0
  79: r1 = r7
  80: r1 += 16
  81: r2 = 16
  82: r3 = r6
  83: r3 += 40
  84: call 113
  85: r1 = r7
  86: r1 += 32
  87: r2 = 16
  88: r3 = r6
  89: r3 += 56
  90: call 113
  91: r0 = *(u32 *)(r6 +20)
  92: r0 <<= 32
  93: r0 s>>= 32
  94: *(u64 *)(r7 +48) = r0
  95: r1 = r7
  96: r2 = 0
  97: call 132
  98: r0 = 0
  99: exit
[
  {
    "size": 48,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "saddr",
        "offset": 16,
        "type": "inet",
        "len": 4
      },
      {
        "name": "daddr",
        "offset": 24,
        "type": "inet",
        "len": 4
      },
      {
        "name": "raw",
        "offset": 32,
        "type": "bytes",
        "len": 4
      },
      {
        "name": "state",
        "offset": 40,
        "type": "i64"
      }
    ]
  },
  {
    "size": 56,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "saddr",
        "offset": 16,
        "type": "inet",
        "len": 16
      },
      {
        "name": "daddr",
        "offset": 32,
        "type": "inet",
        "len": 16
      },
      {
        "name": "state",
        "offset": 48,
        "type": "i64"
      }
    ]
  }
]

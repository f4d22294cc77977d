p0_0 (tracepoint/syscalls/sys_enter_openat):
   0: r6 = r1
   1: r0 = *(u64 *)(r6 +24)
   2: r3 = r0
   3: r1 = r10
   4: r1 += -16
   5: r2 = 16
   6: call 114
   7: r0 = *(u8 *)(r10 -16)
   8: if r0 != 47 goto +23
   9: r0 = *(u8 *)(r10 -15)
  10: if r0 != 101 goto +21
  11: r0 = *(u8 *)(r10 -14)
  12: if r0 != 116 goto +19
  13: r0 = *(u8 *)(r10 -13)
  14: if r0 != 99 goto +17
  15: r0 = *(u8 *)(r10 -12)
  16: if r0 != 47 goto +15
  17: r0 = *(u8 *)(r10 -11)
  18: if r0 != 115 goto +13
  19: r0 = *(u8 *)(r10 -10)
  20: if r0 != 104 goto +11
  21: r0 = *(u8 *)(r10 -9)
  22: if r0 != 97 goto +9
  23: r0 = *(u8 *)(r10 -8)
  24: if r0 != 100 goto +7
  25: r0 = *(u8 *)(r10 -7)
  26: if r0 != 111 goto +5
  27: r0 = *(u8 *)(r10 -6)
  28: if r0 != 119 goto +3
  29: r0 = *(u8 *)(r10 -5)
  30: if r0 != 0 goto +1
  31: goto +1
  32: goto +43
  33: r1 = map[0]
  35: r2 = 112
  36: r3 = 0
  37: call 131
  38: if r0 != 0 goto +10
  39: *(u32 *)(r10 -8) = 0
  40: r1 = map[0]
  42: r2 = r10
  43: r2 += -8
  44: call 1
  45: if r0 == 0 goto +2
  46: r1 = 1
  47: lock *(u64 *)(r0 +0) += r1
  48: goto +27
  49: r7 = r0
  50: call 5
  51: *(u64 *)(r7 +0) = r0
  52: *(u32 *)(r7 +8) = 0
  53: *(u32 *)(r7 +12) = 0
  54: call 14
  55: r0 >>= 32
  56: *(u64 *)(r7 +16) = r0
  57: r1 = r7
  58: r1 += 24
  59: r2 = 16
  60: call 16
  61: r0 = *(u64 *)(r6 +24)
  62: r3 = r0
  63: r1 = r7
  64: r1 += 40
  65: r2 = 64
  66: call 114
  67: r0 = *(u64 *)(r6 +24)
  68: r3 = r0
  69: r1 = r7
  70: r1 += 104
  71: r2 = 8
  72: call 114
  73: r1 = r7
  74: r2 = 0
  75: call 132
  76: r0 = 0
  77: exit
[
  {
    "size": 112,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "pid",
        "offset": 16,
        "type": "u64"
      },
      {
        "name": "comm",
        "offset": 24,
        "type": "str",
        "len": 16
      },
      {
        "name": "path",
        "offset": 40,
        "type": "str",
        "len": 64
      },
      {
        "name": "short",
        "offset": 104,
        "type": "str",
        "len": 8
      }
    ]
  }
]

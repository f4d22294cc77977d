p0_0 (tracepoint/syscalls/sys_enter_exit_group):
   0: r6 = r1
   1: r1 = r10
   2: r1 += -16
   3: r2 = 16
   4: call 16
   5: r0 = *(u8 *)(r10 -16)
   6: if r0 != 98 goto +9
   7: r0 = *(u8 *)(r10 -15)
   8: if r0 != 97 goto +7
   9: r0 = *(u8 *)(r10 -14)
  10: if r0 != 115 goto +5
  11: r0 = *(u8 *)(r10 -13)
  12: if r0 != 104 goto +3
  13: r0 = *(u8 *)(r10 -12)
  14: if r0 != 0 goto +1
  15: goto +28
  16: r1 = map[0]
  18: r2 = 32
  19: r3 = 0
  20: call 131
  21: if r0 != 0 goto +10
  22: *(u32 *)(r10 -8) = 0
  23: r1 = map[0]
  25: r2 = r10
  26: r2 += -8
  27: call 1
  28: if r0 == 0 goto +2
  29: r1 = 1
  30: lock *(u64 *)(r0 +0) += r1
  31: goto +12
  32: r7 = r0
  33: call 5
  34: *(u64 *)(r7 +0) = r0
  35: *(u32 *)(r7 +8) = 0
  36: *(u32 *)(r7 +12) = 0
  37: r1 = r7
  38: r1 += 16
  39: r2 = 16
  40: call 16
  41: r1 = r7
  42: r2 = 0
  43: call 132
  44: r0 = 0
  45: exit
p0_1 (tracepoint/syscalls/sys_enter_getppid):
   0: r6 = r1
   1: r1 = r10
   2: r1 += -16
   3: r2 = 16
   4: call 16
   5: r0 = *(u8 *)(r10 -16)
   6: if r0 != 98 goto +9
   7: r0 = *(u8 *)(r10 -15)
   8: if r0 != 97 goto +7
   9: r0 = *(u8 *)(r10 -14)
  10: if r0 != 115 goto +5
  11: r0 = *(u8 *)(r10 -13)
  12: if r0 != 104 goto +3
  13: r0 = *(u8 *)(r10 -12)
  14: if r0 != 0 goto +1
  15: goto +28
  16: r1 = map[0]
  18: r2 = 32
  19: r3 = 0
  20: call 131
  21: if r0 != 0 goto +10
  22: *(u32 *)(r10 -8) = 0
  23: r1 = map[0]
  25: r2 = r10
  26: r2 += -8
  27: call 1
  28: if r0 == 0 goto +2
  29: r1 = 1
  30: lock *(u64 *)(r0 +0) += r1
  31: goto +12
  32: r7 = r0
  33: call 5
  34: *(u64 *)(r7 +0) = r0
  35: *(u32 *)(r7 +8) = 1
  36: *(u32 *)(r7 +12) = 0
  37: r1 = r7
  38: r1 += 16
  39: r2 = 16
  40: call 16
  41: r1 = r7
  42: r2 = 0
  43: call 132
  44: r0 = 0
  45: exit
p1_0 (kprobe/do_exit):
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
  20: *(u32 *)(r7 +8) = 2
  21: *(u32 *)(r7 +12) = 0
  22: r0 = *(u64 *)(r6 +112)
  23: *(u64 *)(r7 +16) = r0
  24: r1 = r7
  25: r2 = 0
  26: call 132
  27: r0 = 0
  28: exit
p2_0 (kretprobe/do_fork):
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
  20: *(u32 *)(r7 +8) = 3
  21: *(u32 *)(r7 +12) = 0
  22: r0 = *(u64 *)(r6 +80)
  23: *(u64 *)(r7 +16) = r0
  24: r1 = r7
  25: r2 = 0
  26: call 132
  27: r0 = 0
  28: exit
[
  {
    "size": 32,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "who",
        "offset": 16,
        "type": "str",
        "len": 16
      }
    ]
  },
  {
    "size": 32,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "who",
        "offset": 16,
        "type": "str",
        "len": 16
      }
    ]
  },
  {
    "size": 24,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "code",
        "offset": 16,
        "type": "u64"
      }
    ]
  },
  {
    "size": 24,
    "fields": [
      {
        "name": "ts_ns",
        "offset": 0,
        "type": "u64"
      },
      {
        "name": "child",
        "offset": 16,
        "type": "i64"
      }
    ]
  }
]

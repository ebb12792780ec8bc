/* Replays fuzzing regressions: every file in the directories given (inputs that once crashed a
 * parser) goes through both fuzz entry points, which abort on any misbehaviour, and ASan/UBSan
 * builds catch the rest. A missing directory counts as empty. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "fuzz.h"

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    return 0;
  }
  size_t size = (size_t)sb.st_size;
  uint8_t *buf = malloc(size ? size : 1);
  size_t got = buf ? fread(buf, 1, size, f) : 0;
  fclose(f);
  if (!buf || got != size) {
    free(buf);
    fprintf(stderr, "cannot read %s\n", path);
    return -1;
  }
  printf("replay %s (%zu bytes)\n", path, size);
  fflush(stdout);
  pt_fuzz_npy(buf, size);
  pt_fuzz_onnx(buf, size);
  free(buf);
  return 1;
}

int main(int argc, char **argv) {
  int files = 0, errors = 0;
  for (int i = 1; i < argc; i++) {
    DIR *d = opendir(argv[i]);
    if (!d) {
      int r = replay_file(argv[i]);
      files += r > 0;
      errors += r < 0;
      continue;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.' || strcmp(e->d_name, "README") == 0) continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
      int r = replay_file(path);
      files += r > 0;
      errors += r < 0;
    }
    closedir(d);
  }
  printf("%d passed, %d failed\n", files, errors);
  return errors ? 1 : 0;
}

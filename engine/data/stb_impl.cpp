// The one translation unit that compiles stb_image (decoding) and stb_image_write (encoding).
// Only stb's PNG decoder is compiled: JPEG goes through libjpeg (engine/data/image.cpp), and no
// other format is read.
#define STBI_ONLY_PNG
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

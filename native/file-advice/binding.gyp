{
  "targets": [
    {
      "target_name": "file_advice",
      "sources": ["file_advice.c"],
      "cflags": ["-Wall", "-Wextra", "-Werror"]
    }
  ]
}

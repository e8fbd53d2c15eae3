# Plots of an R room go to the room's plots panel (replroom/plotting.py): the server
# starts R with R_PROFILE_USER naming this file. Graphics go to a device that draws
# nowhere but keeps what was drawn; after each top-level call (a line, or a Run's
# source()) that changed the plot, it is drawn again as a PNG into REPLROOM_PLOTS_DIR,
# where the server takes it. A device opened by the user (png(), pdf()) is theirs.
local({
  dir <- Sys.getenv("REPLROOM_PLOTS_DIR", "/tmp/.replroom/plots")
  count <- 0L
  last <- NULL
  ours <- 0L  # the device that draws nowhere, once opened

  send <- function(plot) {
    dir.create(dir, showWarnings = FALSE, recursive = TRUE)
    count <<- count + 1L
    # Name order is drawing order, and the name says who drew it (as Python's).
    name <- sprintf("%020.0f-r-%d-%d.png", as.numeric(Sys.time()) * 1e9, Sys.getpid(), count)
    # Written under a hidden name and renamed: the server never takes half a file.
    hidden <- file.path(dir, paste0(".", name))
    screen <- dev.cur()
    grDevices::png(hidden, width = 640, height = 480, type = "cairo")
    tryCatch(grDevices::replayPlot(plot), finally = {
      grDevices::dev.off()
      grDevices::dev.set(screen)
    })
    file.rename(hidden, file.path(dir, name))
  }

  options(device = function(...) {
    grDevices::pdf(NULL)
    grDevices::dev.control(displaylist = "enable")
    ours <<- grDevices::dev.cur()
  })

  invisible(addTaskCallback(function(expr, value, ok, visible) {
    if (ours > 1L && grDevices::dev.cur() == ours) {
      plot <- tryCatch(grDevices::recordPlot(), error = function(e) NULL)
      if (!is.null(plot) && !is.null(plot[[1]]) && !identical(plot, last)) {
        last <<- plot
        tryCatch(send(plot), error = function(e) message("[plot not shown: ", conditionMessage(e), "]"))
      }
    }
    TRUE
  }, name = "replroom plots"))
})
